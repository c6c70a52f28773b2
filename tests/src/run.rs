//! Running a command and judging its result, the way tests need it.
//!
//! Every end-to-end test runs dozens of real `nix` commands; when one fails, the panic must
//! tell the whole story at once: the command line (with `NIX_REMOTE`, the user and the
//! working directory), the exit status, stdout and stderr. The helpers here do that, and
//! they also kill a command that runs longer than the timeout (default 300 s, env
//! `NIXNEST_TEST_TIMEOUT` in seconds), so a daemon that hangs fails one test instead of
//! stalling the whole CI job.
//!
//! The helpers own the child's stdio: stdin is empty unless given with
//! [`RunExt::run_with_input`]; stdout and stderr are captured. Each command runs in its own
//! process group, which is killed as a whole on timeout.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::chroot;

/// How long a command may run before it is killed: `NIXNEST_TEST_TIMEOUT` seconds, else 300.
pub fn command_timeout() -> Duration {
    let secs = std::env::var("NIXNEST_TEST_TIMEOUT")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(300);
    Duration::from_secs(secs)
}

/// Running a [`Command`] to completion with a panic message that shows everything.
pub trait RunExt {
    /// Runs the command with empty stdin and panics unless it exits with status 0.
    /// Returns stdout as (lossy) UTF-8 without trailing whitespace, e.g. one store path.
    fn run(&mut self) -> String;

    /// Like [`RunExt::run`] but returns the whole [`Output`] (raw stdout, stderr).
    fn run_output(&mut self) -> Output;

    /// Runs the command with `input` on stdin; panics unless it exits with status 0.
    fn run_with_input(&mut self, input: &[u8]) -> Output;

    /// Runs the command and panics if it *succeeds*; for tests of refusals and errors.
    /// The returned [`Output`] holds the error message on stderr.
    fn run_failure(&mut self) -> Output;

    /// Runs the command and returns whatever happened; panics only on timeout or if the
    /// program cannot be started.
    fn run_unchecked(&mut self) -> Output;

    /// Like [`RunExt::run_unchecked`] with a timeout of its own instead of
    /// [`command_timeout`].
    fn run_within(&mut self, timeout: Duration) -> Output;
}

impl RunExt for Command {
    fn run(&mut self) -> String {
        let out = self.run_output();
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    }

    fn run_output(&mut self) -> Output {
        let out = run_command(self, None, command_timeout());
        if !out.status.success() {
            panic!("{}", report(self, "command failed", &out));
        }
        out
    }

    fn run_with_input(&mut self, input: &[u8]) -> Output {
        let out = run_command(self, Some(input), command_timeout());
        if !out.status.success() {
            panic!("{}", report(self, "command failed", &out));
        }
        out
    }

    fn run_failure(&mut self) -> Output {
        let out = run_command(self, None, command_timeout());
        if out.status.success() {
            panic!(
                "{}",
                report(self, "command succeeded but was expected to fail", &out)
            );
        }
        out
    }

    fn run_unchecked(&mut self) -> Output {
        run_command(self, None, command_timeout())
    }

    fn run_within(&mut self, timeout: Duration) -> Output {
        run_command(self, None, timeout)
    }
}

/// Runs `cmd` with captured output, feeding `input` (or nothing) on stdin, and kills its
/// process group when `timeout` expires.
fn run_command(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Output {
    match try_run(cmd, input, timeout) {
        Ok(out) => out,
        Err(out) => panic!(
            "{}",
            report(cmd, &format!("command timed out after {timeout:?}"), &out)
        ),
    }
}

/// Runs `cmd` like the [`RunExt`] methods (captured output, `input` or nothing on stdin, own
/// process group) without judging the result: `Ok` with whatever it did, or `Err` with the
/// output so far if it ran longer than `timeout` (its process group is then killed). For
/// tests that record a hanging command as a finding instead of panicking.
pub fn try_run(
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output, Output> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", describe(cmd)));

    // Pipes are drained on their own threads so a chatty child can never block on a full
    // pipe while we wait for it.
    let stdin = child.stdin.take();
    let input = input.map(<[u8]>::to_vec);
    let feeder = std::thread::spawn(move || {
        if let (Some(mut stdin), Some(input)) = (stdin, input) {
            // A child that exits without reading all of its input is not our failure.
            let _ = stdin.write_all(&input);
        }
    });
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());

    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < timeout => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Ok(None) => {
                kill_group(child.id());
                let _ = child.wait();
                let _ = feeder.join();
                return Err(Output {
                    status: ExitStatus::from_raw(9),
                    stdout: join(stdout),
                    stderr: join(stderr),
                });
            }
            Err(e) => panic!("waiting for {}: {e}", describe(cmd)),
        }
    };
    // The group may still hold the pipes open (a background grandchild); end it so the
    // readers see end-of-file.
    kill_group(child.id());
    let _ = feeder.join();
    Ok(Output {
        status,
        stdout: join(stdout),
        stderr: join(stderr),
    })
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

fn join(handle: std::thread::JoinHandle<Vec<u8>>) -> Vec<u8> {
    handle.join().unwrap_or_default()
}

/// SIGKILLs the process group led by `pid` (ignoring "no such process").
pub(crate) fn kill_group(pid: u32) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// The panic text for a command that did not do what the test expected.
pub fn report(cmd: &Command, what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n---",
        describe(cmd),
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end(),
    )
}

/// A one-line, shell-like rendering of `cmd`: `NIX_REMOTE`, the working directory, then the
/// program and its arguments, with the long chroot entry script abbreviated.
pub fn describe(cmd: &Command) -> String {
    let mut s = String::new();
    let remote = cmd.get_envs().find(|(key, _)| *key == "NIX_REMOTE");
    if let Some((_, Some(value))) = remote {
        s.push_str(&format!("NIX_REMOTE={} ", quote(value)));
    }
    if let Some(dir) = cmd.get_current_dir() {
        s.push_str(&format!("(in {}) ", dir.display()));
    }
    s.push_str(&quote(cmd.get_program()));
    for arg in cmd.get_args() {
        s.push(' ');
        if arg == chroot::ENTER_SCRIPT {
            s.push_str("<enter-chroot script>");
        } else {
            s.push_str(&quote(arg));
        }
    }
    s
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=+,@%".contains(&b));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}
