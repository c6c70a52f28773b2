//! The `nixnest-daemon` binary: socket activation through systemd's
//! `systemd-socket-activate`, binding its own socket, `status`, `--stdio`, signals.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_nixnest-daemon");
const PATIENCE: Duration = Duration::from_secs(20);

/// A hermetic environment: configuration and state under a temporary directory.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new(conf: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/nix.conf"), conf).unwrap();
        Env { dir }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("NIX_CONF_DIR", self.dir.path().join("etc"))
            .env("NIX_STATE_DIR", self.state())
            .env("NIX_STORE_DIR", self.dir.path().join("store"))
            .env("NIX_LOG_DIR", self.dir.path().join("log"))
            .env("NIX_USER_CONF_FILES", "")
            .env("RUST_LOG", "debug");
        cmd
    }
}

/// A running child whose stderr lines arrive on a channel.
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Daemon {
    fn spawn(mut cmd: Command) -> Daemon {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Daemon {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a log line containing `needle`.
    fn expect_log(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line containing {needle:?}; got:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// SIGTERM, then the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "daemon did not exit after SIGTERM:\n{}",
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_path(path: &Path) {
    let deadline = Instant::now() + PATIENCE;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Connects, sends nothing (shutting down its side) and reads until EOF: a connection
/// that ends before the handshake gets no protocol bytes.
fn connect_and_read(path: &Path) -> Vec<u8> {
    // The socket file appears at bind(2), a moment before listen(2).
    let deadline = Instant::now() + PATIENCE;
    let mut stream = loop {
        match UnixStream::connect(path) {
            Ok(s) => break s,
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("connecting to {}: {e}", path.display()),
        }
    };
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).unwrap();
    bytes
}

#[test]
fn socket_activation_picks_up_fd_3() {
    let Some(activate) = [
        "/usr/bin/systemd-socket-activate",
        "/bin/systemd-socket-activate",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists()) else {
        eprintln!("skipping: systemd-socket-activate is not installed");
        return;
    };
    let env = Env::new("");
    let socket = env.dir.path().join("activated.sock");
    let mut cmd = env.command(activate);
    cmd.arg("-l")
        .arg(&socket)
        .arg("--fdname=nix-daemon.socket")
        .arg(BIN)
        .arg("--daemon");
    let mut daemon = Daemon::spawn(cmd);
    wait_for_path(&socket);

    // systemd-socket-activate starts the daemon on the first connection.
    assert_eq!(connect_and_read(&socket), b"");
    daemon.expect_log("listening on fd 3 (nix-daemon.socket)");
    let accepted = daemon.expect_log("accepted connection from pid ");
    assert!(
        accepted.contains(&format!("pid {}, user root (trusted)", std::process::id()))
            || !rustix::process::geteuid().is_root(),
        "{accepted}"
    );
    // Activated: the daemon did not bind a path of its own.
    assert!(!env.state().join("daemon-socket/socket").exists());
    // A second connection reaches the same process.
    assert_eq!(connect_and_read(&socket), b"");
    daemon.expect_log("conn{id=2");
    assert!(daemon.terminate().success());
}

#[test]
fn binds_socket_serves_status_and_exits_cleanly_on_sigterm() {
    let env = Env::new("max-jobs = 3\nno-such-setting = 1\n");
    let mut daemon = Daemon::spawn({
        let mut cmd = env.command(BIN);
        cmd.arg("--daemon");
        cmd
    });
    let socket = env.state().join("daemon-socket/socket");
    daemon.expect_log("listening on ");
    daemon.expect_log("nix.conf:2: unknown setting 'no-such-setting'");
    assert_eq!(connect_and_read(&socket), b"");
    daemon.expect_log("accepted connection");

    let out = env.command(BIN).arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with(&format!("nixnest-daemon {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(
        text.contains("0 open sessions") && text.contains("0 running builds"),
        "{text}"
    );

    let out = env
        .command(BIN)
        .args(["status", "--json"])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["pid"].as_u64(), Some(u64::from(daemon.child.id())));

    // A second daemon on the same socket must not steal it.
    let out = env.command(BIN).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another daemon is already listening"));

    let status = daemon.terminate();
    assert!(status.success(), "{status:?}");
}

#[test]
fn stdio_keeps_stdout_for_the_protocol() {
    let env = Env::new("");
    let mut child = env
        .command(BIN)
        .arg("--stdio")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"").unwrap();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(out.stdout.is_empty(), "logs must never reach stdout");
    assert!(
        log.contains("serving a session on standard input/output (trusted)"),
        "{log}"
    );
}

#[test]
fn trust_flags_need_the_experimental_feature() {
    let env = Env::new("");
    let out = env
        .command(BIN)
        .args(["--stdio", "--force-untrusted"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("daemon-trust-override"));

    let out = env
        .command(BIN)
        .args([
            "--force-trusted",
            "--option",
            "experimental-features",
            "daemon-trust-override",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only supported with '--stdio'"));

    let out = env
        .command(BIN)
        .args([
            "--stdio",
            "--force-untrusted",
            "--option",
            "extra-experimental-features",
            "daemon-trust-override",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("standard input/output (allowed)"), "{log}");
}

#[test]
fn bad_configuration_is_a_clear_error() {
    let env = Env::new("sandbox = maybe\n");
    let out = env.command(BIN).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nix.conf:1: setting 'sandbox' has invalid value 'maybe'"),
        "{err}"
    );

    let out = env.command(BIN).arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text,
        format!(
            "nixnest-daemon {v}\nreports itself to Nix clients as version 2.34.8+nixnest.{v}\n",
            v = env!("CARGO_PKG_VERSION")
        )
    );
}
