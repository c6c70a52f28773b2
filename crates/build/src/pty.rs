//! The channel carrying the builder's stdout and stderr: a pseudo-terminal as CppNix uses
//! (so tools that check `isatty` behave as on a terminal), in raw mode so `\n` is not
//! turned into `\r\n`. With a build user the slave is chowned to it with mode 0600. If no
//! pseudo-terminal can be had, a pipe does the same job.

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;

use crate::error::{Error, Result};

/// Reading end (ours) and writing end (the builder's stdout/stderr).
#[derive(Debug)]
pub struct LogChannel {
    pub master: OwnedFd,
    pub slave: OwnedFd,
    pub is_pty: bool,
}

impl LogChannel {
    /// A raw-mode pseudo-terminal (slave owned by `owner` with mode 0600 when given), or
    /// a pipe if that fails.
    pub fn open(owner: Option<u32>) -> Result<Self> {
        match open_pty(owner) {
            Ok(c) => Ok(c),
            Err(e) => {
                tracing::debug!("no pseudo-terminal for the build log ({e}); using a pipe");
                let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                    .map_err(|e| Error::io("creating the log pipe", e))?;
                Ok(LogChannel {
                    master: r,
                    slave: w,
                    is_pty: false,
                })
            }
        }
    }
}

fn open_pty(owner: Option<u32>) -> Result<LogChannel> {
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
            .map_err(|e| Error::io("opening pseudoterminal master", e))?;
    let name = rustix::pty::ptsname(&master, Vec::new())
        .map_err(|e| Error::io("getting the pseudoterminal slave name", e))?;
    if let Some(uid) = owner {
        rustix::fs::chmod(name.as_c_str(), Mode::from_raw_mode(0o600))
            .map_err(|e| Error::io("changing mode of pseudoterminal slave", e))?;
        rustix::fs::chown(
            name.as_c_str(),
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(0)),
        )
        .map_err(|e| Error::io("changing owner of pseudoterminal slave", e))?;
    } else {
        rustix::pty::grantpt(&master)
            .map_err(|e| Error::io("granting access to pseudoterminal slave", e))?;
    }
    rustix::pty::unlockpt(&master).map_err(|e| Error::io("unlocking pseudoterminal", e))?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("opening pseudoterminal slave", e))?;
    let mut t = rustix::termios::tcgetattr(slave.as_fd())
        .map_err(|e| Error::io("getting pseudoterminal attributes", e))?;
    t.make_raw();
    rustix::termios::tcsetattr(slave.as_fd(), rustix::termios::OptionalActions::Now, &t)
        .map_err(|e| Error::io("putting pseudoterminal into raw mode", e))?;
    Ok(LogChannel {
        master,
        slave,
        is_pty: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_pty_passes_newlines_unchanged() {
        let c = LogChannel::open(None).unwrap();
        rustix::io::write(&c.slave, b"a\nb\n").unwrap();
        let mut buf = [0u8; 16];
        let n = rustix::io::read(&c.master, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"a\nb\n", "pty={}", c.is_pty);
    }
}
