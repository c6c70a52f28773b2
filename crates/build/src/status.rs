//! Build results: `BuildResult::Status` with its wire values, and how a builder's wait
//! status is described (CppNix's `statusToString`).

use std::ffi::CStr;

/// `BuildResult::Status` (worker protocol values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BuildStatus {
    Built = 0,
    Substituted = 1,
    AlreadyValid = 2,
    PermanentFailure = 3,
    InputRejected = 4,
    OutputRejected = 5,
    TransientFailure = 6,
    CachedFailure = 7,
    TimedOut = 8,
    MiscFailure = 9,
    DependencyFailed = 10,
    LogLimitExceeded = 11,
    NotDeterministic = 12,
    ResolvesToAlreadyValid = 13,
    NoSubstituters = 14,
}

impl BuildStatus {
    /// The wire value.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Whether the build counts as a success.
    pub fn is_success(self) -> bool {
        matches!(
            self,
            BuildStatus::Built
                | BuildStatus::Substituted
                | BuildStatus::AlreadyValid
                | BuildStatus::ResolvesToAlreadyValid
        )
    }
}

/// CppNix's `statusToString` for a `waitpid` status: "succeeded", "failed with exit code
/// N", "failed due to signal N (`<strsignal>`)", or "died abnormally".
pub fn status_to_string(status: i32) -> String {
    if libc::WIFEXITED(status) {
        match libc::WEXITSTATUS(status) {
            0 => "succeeded".to_owned(),
            n => format!("failed with exit code {n}"),
        }
    } else if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        format!("failed due to signal {sig} ({})", signal_name(sig))
    } else {
        "died abnormally".to_owned()
    }
}

/// `strsignal(sig)`.
fn signal_name(sig: i32) -> String {
    // SAFETY: glibc returns a pointer to a static description (or to a thread-local
    // buffer for unknown numbers); we copy it at once.
    let p = unsafe { libc::strsignal(sig) };
    if p.is_null() {
        return format!("signal {sig}");
    }
    // SAFETY: non-null, NUL-terminated.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Whether a wait status is "exited with 0".
pub fn status_ok(status: i32) -> bool {
    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_values() {
        assert_eq!(BuildStatus::Built.code(), 0);
        assert_eq!(BuildStatus::PermanentFailure.code(), 3);
        assert_eq!(BuildStatus::InputRejected.code(), 4);
        assert_eq!(BuildStatus::OutputRejected.code(), 5);
        assert_eq!(BuildStatus::TransientFailure.code(), 6);
        assert_eq!(BuildStatus::TimedOut.code(), 8);
        assert_eq!(BuildStatus::MiscFailure.code(), 9);
        assert_eq!(BuildStatus::LogLimitExceeded.code(), 11);
        assert_eq!(BuildStatus::NoSubstituters.code(), 14);
    }

    #[test]
    fn status_texts() {
        assert_eq!(status_to_string(0), "succeeded");
        assert_eq!(status_to_string(3 << 8), "failed with exit code 3");
        assert_eq!(status_to_string(9), "failed due to signal 9 (Killed)");
        assert_eq!(status_to_string(15), "failed due to signal 15 (Terminated)");
        assert!(status_ok(0));
        assert!(!status_ok(1 << 8));
    }
}
