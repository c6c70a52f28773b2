//! Normalisations of client output, each removing one difference that is legitimate between
//! two correct daemons (or two runs of the same daemon). Every variant says why; none is
//! applied unless a step asks for it.

use nixnest_core::Hash;

/// One normalisation of a step's stdout and stderr.
#[derive(Clone, Debug)]
pub enum Norm {
    /// Sorts the lines. For outputs whose order Nix does not define: it depends on the order
    /// of a `readdir`, of SQLite rows without `ORDER BY`, or of a hash set (e.g. the paths
    /// `--gc` deletes, the roots `--print-roots` finds). Never used where Nix sorts itself.
    SortLines,
    /// Sorts each run of consecutive lines that start with the prefix, leaving every other
    /// line where it is: for progress lines about a set Nix walks in no defined order
    /// (`deleting '…'` during garbage collection), while the phases around them keep
    /// their order.
    SortRuns(&'static str),
    /// Replaces a positive `"registrationTime": N` (JSON), `registrationTime N` or
    /// `registration_time: N` (a `ValidPathInfo` printed by the tests) value with `<time>`: the moment a path was registered differs between any two runs. A zero or
    /// missing time is left alone, so a daemon that forgets it still differs.
    RegistrationTime,
    /// Replaces the value of a `Version: X` line and of a JSON `"version":"X"` (`nix store
    /// ping`/`info`) with `<version>`: each daemon reports its own version string (nixnest
    /// reports `2.x.y+nixnest.z`), which is no behaviour of the protocol. The line or key
    /// itself must still be there, with a non-empty value.
    DaemonVersion,
    /// Replaces the system error of a connection the daemon closed without a protocol byte
    /// (`reading from file: Connection reset by peer`, `writing to file: Broken pipe`, and
    /// 2.34's `read of N bytes: …` / `write of N bytes: …`) with `<connection reset>`:
    /// whether the client's first write or its first read notices the close is a race, even
    /// between two runs of the same daemon. A clean end-of-file (the daemon read the client's
    /// greeting first) is not normalised.
    RefusedConnection,
    /// Removes ANSI SGR escapes (`ESC [ … m`) from error messages read off the wire: CppNix
    /// colours store paths in its messages, nixnest may send plain text (worker-protocol.md
    /// §11.7); the CLI clients strip the escapes anyway when not writing to a terminal.
    StripAnsi,
    /// Replaces process ids in `{temp:N}` and `/proc/N/` with `PID`: pids differ between runs.
    Pids,
    /// Replaces stdout with its SHA-256 and length (for binary output such as NARs and
    /// exports, compared exactly but printed short).
    Digest,
    /// Removes lines containing this text. Only for lines that are about the machine, not
    /// the store (documented at each use).
    DropLines(&'static str),
    /// Replaces every occurrence of the first text with the second (documented at each use).
    Replace(String, String),
}

impl Norm {
    /// Normalises text (stderr, and stdout unless it is [`Norm::Digest`]).
    pub fn apply(&self, text: &str) -> String {
        match self {
            Norm::SortLines => {
                let mut lines: Vec<&str> = text.lines().collect();
                lines.sort_unstable();
                let mut out = lines.join("\n");
                if text.ends_with('\n') {
                    out.push('\n');
                }
                out
            }
            Norm::SortRuns(prefix) => {
                let mut out: Vec<&str> = Vec::new();
                let mut run: Vec<&str> = Vec::new();
                for line in text.split_inclusive('\n') {
                    if line.starts_with(prefix) {
                        run.push(line);
                        continue;
                    }
                    run.sort_unstable_by_key(|l| l.trim_end_matches('\n'));
                    out.append(&mut run);
                    out.push(line);
                }
                run.sort_unstable_by_key(|l| l.trim_end_matches('\n'));
                out.append(&mut run);
                let mut joined = String::new();
                for (i, line) in out.iter().enumerate() {
                    joined.push_str(line.trim_end_matches('\n'));
                    if i + 1 < out.len() || text.ends_with('\n') {
                        joined.push('\n');
                    }
                }
                joined
            }
            Norm::RegistrationTime => {
                let once = replace_number_after(text, "\"registrationTime\":");
                let twice = replace_number_after(&once, "registrationTime ");
                replace_number_after(&twice, "registration_time: ")
            }
            Norm::DaemonVersion => text
                .split_inclusive('\n')
                .map(|line| {
                    let body = line.trim_end_matches('\n');
                    let nl = &line[body.len()..];
                    match body.split_once("Version: ") {
                        Some((head, v)) if !v.trim().is_empty() => {
                            format!("{head}Version: <version>{nl}")
                        }
                        _ => line.to_owned(),
                    }
                })
                .collect::<String>()
                .split("\"version\":\"")
                .enumerate()
                .map(|(i, part)| match (i, part.split_once('"')) {
                    (0, _) => part.to_owned(),
                    (_, Some((v, rest))) if !v.is_empty() => format!("<version>\"{rest}"),
                    _ => part.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("\"version\":\""),
            Norm::RefusedConnection => text
                .split_inclusive('\n')
                .map(|line| {
                    let Some((head, tail)) = line.rsplit_once("': error: ") else {
                        return line.to_owned();
                    };
                    let body = tail.trim_end_matches('\n');
                    let nl = &tail[body.len()..];
                    let io = |prefix: &str, suffix: &str| {
                        body.strip_prefix(prefix).is_some_and(|rest| {
                            rest.strip_suffix(suffix)
                                .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
                        })
                    };
                    let reset = matches!(
                        body,
                        "reading from file: Connection reset by peer"
                            | "writing to file: Broken pipe"
                    ) || io("read of ", " bytes: Connection reset by peer")
                        || io("write of ", " bytes: Broken pipe");
                    if head.contains("cannot open connection to remote store") && reset {
                        format!("{head}': error: <connection reset>{nl}")
                    } else {
                        line.to_owned()
                    }
                })
                .collect(),
            Norm::StripAnsi => {
                let mut out = String::with_capacity(text.len());
                let mut rest = text;
                while let Some(at) = rest.find("\u{1b}[") {
                    out.push_str(&rest[..at]);
                    let tail = &rest[at + 2..];
                    let params = tail.len()
                        - tail
                            .trim_start_matches(|c: char| c.is_ascii_digit() || c == ';')
                            .len();
                    if tail[params..].starts_with('m') {
                        rest = &tail[params + 1..];
                    } else {
                        out.push_str("\u{1b}[");
                        rest = tail;
                    }
                }
                out.push_str(rest);
                out
            }
            Norm::Pids => {
                let once = replace_digits_between(text, "{temp:", "}");
                replace_digits_between(&once, "/proc/", "/")
            }
            Norm::Digest => text.to_owned(),
            Norm::DropLines(needle) => text
                .split_inclusive('\n')
                .filter(|l| !l.contains(needle))
                .collect(),
            Norm::Replace(from, to) => text.replace(from.as_str(), to),
        }
    }

    /// Normalises stdout bytes.
    pub fn apply_bytes(&self, bytes: &[u8]) -> Vec<u8> {
        match self {
            Norm::Digest => format!(
                "sha256:{} ({} bytes)\n",
                Hash::sha256(bytes).to_base16(),
                bytes.len()
            )
            .into_bytes(),
            _ => self.apply(&String::from_utf8_lossy(bytes)).into_bytes(),
        }
    }
}

/// What the garbage collector prints that legitimately differs between daemons:
///
/// * `deleting '…'` and `removing stale link from …` come in the order of a directory
///   listing or hash set ([`Norm::SortRuns`]);
/// * `removing stale temporary roots file "<stateDir>/temproots/<pid>"` (Nix ≥ 2.26) is
///   about the per-connection *worker processes* of CppNix, whose temp-roots files are named
///   by their pids and left behind when they exit; a daemon without per-connection processes
///   has no such files ([`Norm::DropLines`]).
pub fn gc() -> Vec<Norm> {
    vec![
        Norm::DropLines("removing stale temporary roots file"),
        Norm::SortRuns("deleting '"),
        Norm::SortRuns("removing stale link from"),
    ]
}

/// `nix copy` copies paths in parallel threads, so its `copying path '…'` lines come in the
/// order the client's threads ran ([`Norm::SortRuns`]).
pub fn copy() -> Vec<Norm> {
    vec![Norm::SortRuns("copying path '")]
}

/// Replaces the positive decimal number (after optional spaces) following each `marker`
/// with `<time>`.
fn replace_number_after(text: &str, marker: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(marker) {
        let (head, tail) = rest.split_at(at + marker.len());
        out.push_str(head);
        let spaces = tail.len() - tail.trim_start_matches(' ').len();
        let after = &tail[spaces..];
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let number = &after[..digits];
        out.push_str(&tail[..spaces]);
        if digits > 0 && number.trim_start_matches('0').is_empty() {
            out.push_str(number);
        } else if digits > 0 {
            out.push_str("<time>");
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// Replaces a run of digits directly between `open` and `close` with `PID`.
fn replace_digits_between(text: &str, open: &str, close: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(open) {
        let (head, tail) = rest.split_at(at + open.len());
        out.push_str(head);
        let digits = tail.len() - tail.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits > 0 && tail[digits..].starts_with(close) {
            out.push_str("PID");
            rest = &tail[digits..];
        } else {
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_time_keeps_zero() {
        let n = Norm::RegistrationTime;
        assert_eq!(
            n.apply(r#"[{"registrationTime":1700000000,"x":1},{"registrationTime": 0}]"#),
            r#"[{"registrationTime":<time>,"x":1},{"registrationTime": 0}]"#
        );
    }

    #[test]
    fn pids() {
        assert_eq!(
            Norm::Pids.apply("{temp:123} -> x\n/proc/42/fd/3 -> y\n/proc/self/x"),
            "{temp:PID} -> x\n/proc/PID/fd/3 -> y\n/proc/self/x"
        );
    }

    #[test]
    fn daemon_version() {
        assert_eq!(
            Norm::DaemonVersion.apply("Store URL: x\nVersion: 2.8.0\nTrusted: 1\n"),
            "Store URL: x\nVersion: <version>\nTrusted: 1\n"
        );
        assert_eq!(Norm::DaemonVersion.apply("Version: \n"), "Version: \n");
        assert_eq!(
            Norm::DaemonVersion.apply(r#"{"trusted":1,"url":"u","version":"2.34.8"}"#),
            r#"{"trusted":1,"url":"u","version":"<version>"}"#
        );
        assert_eq!(
            Norm::DaemonVersion.apply(r#"{"version":""}"#),
            r#"{"version":""}"#
        );
    }

    #[test]
    fn sort_runs() {
        let n = Norm::SortRuns("deleting '");
        assert_eq!(
            n.apply(
                "finding\ndeleting 'b'\ndeleting 'a'\ndeleting garbage\ndeleting 'd'\ndeleting 'c'"
            ),
            "finding\ndeleting 'a'\ndeleting 'b'\ndeleting garbage\ndeleting 'c'\ndeleting 'd'"
        );
    }

    #[test]
    fn refused_connection() {
        let n = Norm::RefusedConnection;
        let head = "error: cannot open connection to remote store 'unix:///s': error: ";
        for tail in [
            "reading from file: Connection reset by peer",
            "writing to file: Broken pipe",
            "read of 32768 bytes: Connection reset by peer",
            "write of 16 bytes: Broken pipe",
        ] {
            assert_eq!(
                n.apply(&format!("x\n{head}{tail}\n")),
                format!("x\n{head}<connection reset>\n")
            );
        }
        let eof = format!("{head}unexpected end-of-file\n");
        assert_eq!(n.apply(&eof), eof);
    }

    #[test]
    fn strip_ansi() {
        assert_eq!(
            Norm::StripAnsi.apply("path '\u{1b}[35;1m/x\u{1b}[0m' is \u{1b}[Kodd"),
            "path '/x' is \u{1b}[Kodd"
        );
    }

    #[test]
    fn sort_lines() {
        assert_eq!(Norm::SortLines.apply("b\na\n"), "a\nb\n");
    }
}
